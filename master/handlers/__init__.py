"""One module per HTTP resource; the route table is ``master.app.make_app``."""
