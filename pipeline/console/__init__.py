"""`larder console`: the supervisors' web console (docs/console.md).

Server-rendered pages (aiohttp + jinja2, a little vanilla JS, SVG charts drawn on the server) over a read model
folded from Kafka (alerts, acks, deliveries, annotations, verdicts, resolutions) and InfluxDB for series. Users and
roles live in a users file next to the site file (:mod:`.users`); every action is audited (:mod:`.records`).
Kept import-light: the sink imports :mod:`.records` only.
"""
