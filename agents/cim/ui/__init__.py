"""The web dashboard: server-rendered pages (jinja2), progressive enhancement, live events."""
