"""The wiring of a worker's parts onto its Faust app, one module a part: the trainer, the
scorer, and what every role has (the item catalog, the dashboard's series)."""
