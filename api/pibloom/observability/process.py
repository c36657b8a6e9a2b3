"""process_* metrics for a whole replica: the gunicorn master and all its workers added up.

prometheus-client's own ProcessCollector sees one process, and in multiprocess mode none at all; on a
Raspberry Pi memory and CPU per replica are what run out first, so the scrape reports the sum over the
process tree (`pibloom serve`'s master and workers), or over this process alone when it runs on its
own (tests, `uvicorn pibloom...`).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import psutil
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import multiproc


def replica_processes() -> list[psutil.Process]:
    root_pid = os.environ.get(multiproc.REPLICA_ROOT)
    if not root_pid:
        return [psutil.Process(os.getpid())]
    try:
        root = psutil.Process(int(root_pid))
        return [root, *root.children(recursive=True)]
    except psutil.Error:  # the master is gone: report what is left, this process
        return [psutil.Process(os.getpid())]


class ReplicaProcessCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        processes = replica_processes()
        rss = vms = fds = 0
        cpu = 0.0
        counted = 0
        for proc in processes:
            try:
                with proc.oneshot():
                    memory, times = proc.memory_info(), proc.cpu_times()
                    open_fds = proc.num_fds()
            except (psutil.Error, AttributeError):  # exited meanwhile; num_fds is Unix-only
                continue
            rss, vms, fds = rss + memory.rss, vms + memory.vms, fds + open_fds
            cpu += times.user + times.system
            counted += 1
        start = min(p.create_time() for p in processes)
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of the replica's processes.", rss)
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory of the replica's processes.", vms)
        yield CounterMetricFamily("process_cpu_seconds", "CPU time (user + system) of the replica's processes.", cpu)
        yield GaugeMetricFamily("process_open_fds", "Open file descriptors of the replica's processes.", fds)
        yield GaugeMetricFamily("process_max_fds", "Open file descriptors allowed per process.", _max_fds())
        yield GaugeMetricFamily("process_start_time_seconds", "Start of the replica (Unix time).", start)
        yield GaugeMetricFamily("pibloom_replica_processes", "Processes of this replica (master + workers).", counted)


def _max_fds() -> float:
    return float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
