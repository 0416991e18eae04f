"""autolabel's Label Studio ML backend: the protocol server (``backend.app``), its store use and image fetching.

Entry points: ``backend.app.create_app`` (ASGI app factory) and ``backend.serve.serve`` / ``serve_command``.
"""
