"""streamrec storage layer."""
