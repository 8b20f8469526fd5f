"""Click command groups of the ``streamrec`` CLI, one module per concern."""
