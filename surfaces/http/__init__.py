"""The one HTTP application (``create_app``) and its routers, auth and error answers."""
