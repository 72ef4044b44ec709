"""The request path: the protocol-neutral record every recorder reads (``record``), and the WSGI
driver that fills it (``wsgi``, ``wsgi_environ``). An ASGI front fills the same record."""
