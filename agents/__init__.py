"""streamrec agents layer."""
