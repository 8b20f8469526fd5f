"""The Faust app object for ``faust -A app.main worker`` (role from ``STREAMREC_ROLE``).

Faust does not declare an agent's source topics, and a broker that auto-creates them makes
one partition where the tables need ``STREAMREC_TOPIC_PARTITIONS``; so, as ``streamrec
worker`` does, the topics are created (or checked) before the app exists.
"""

import asyncio

from app.service import create_app
from app.settings import get_settings
from app.topics import ensure_topics

asyncio.run(ensure_topics(get_settings(), role=get_settings().role))
asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust needs one
app = create_app(get_settings())
