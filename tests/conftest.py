"""The suite runs against the dev services: the dev S3 secret is its default (production
settings have none; devtools.settings.use_dev_defaults)."""

from devtools.settings import use_dev_defaults

use_dev_defaults()

# Property tests judge what the code answers, never how fast: on a loaded 2-core machine a
# single example past hypothesis' 200 ms deadline failed a suite (test_segment, once).
from hypothesis import settings  # noqa: E402

settings.register_profile("streamrec", deadline=None)
settings.load_profile("streamrec")
