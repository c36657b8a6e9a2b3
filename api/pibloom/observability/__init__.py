"""What an operator watches: the Prometheus exposition (one scrape for all gunicorn workers through
prometheus-client's multiprocess mode) and the replica's process figures.

May import prometheus_client, psutil and pibloom.metrics / pibloom.settings; nothing from http or engine.
"""
