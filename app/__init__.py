"""streamrec wiring layer: settings, the Faust app, topics, tables, web views, CLI, dev services."""
