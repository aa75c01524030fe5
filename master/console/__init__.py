"""The web console: HTML pages served by the master (Tornado templates, static JS and CSS, no build step).

Pages read the store directly and render every value through the templates' autoescaping; actions call the JSON API
with the session cookie and the XSRF token (``master.handlers.base``). Routes are in ``master.app.make_app``.
"""
