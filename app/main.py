"""The Faust app object for ``faust -A app.main worker`` (role from ``STREAMREC_ROLE``)."""

from app.service import create_app
from app.settings import get_settings

app = create_app(get_settings())
