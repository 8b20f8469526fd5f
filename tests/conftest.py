"""The suite runs against the dev services: the dev S3 secret is its default (production
settings have none; devtools.settings.use_dev_defaults)."""

from devtools.settings import use_dev_defaults

use_dev_defaults()
