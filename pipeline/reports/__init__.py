"""The daily temperature record: per site and local day, a PDF and CSVs an inspector accepts, chained by hash.

See docs/reports.md. Modules: :mod:`.model` (typed records), :mod:`.gather` (InfluxDB -> day data),
:mod:`.compute` (completeness, gaps, statistics, time in range, MKT, excursions), :mod:`.render` (CSV, chart,
PDF), :mod:`.ledger` (hash chain, versions, sign-off on Kafka + InfluxDB), :mod:`.service` (generate, verify,
serve), :mod:`.commands` (`larder report ...`).
"""
