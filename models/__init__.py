"""streamrec models layer."""
