"""Measurement helpers: the one place the benches (testbed/bench_*.py) and every experiment
(experiments/) take their measuring from. Nothing here imports `experiments`.

    runners     iperf3 (JSON report parsed), ping (loss, RTTs, reachability), switch port counters
    pairs       the VM pair to measure between (one network, servers under different leaves)
    throughput  iperf3 with the vrouters' CPU cost; the overlay run with GRO/GSO off or on
    spread      min / median / max of repeated runs
    results     results/<experiment>/<timestamp>/: raw.csv, summary.json, config.yaml, the plot
    provenance  provenance.json: commit, kernel, OVS, Python and package versions, the command
    plot        matplotlib set-up: Agg, labelled axes, titles, legends, tight layout

`from testbed import measure` gives the runners directly (measure.iperf3, measure.start_ping, ...).
"""
from testbed.measure.runners import (
                                     finish_ping,
                                     iperf3,
                                     parse_iperf3,
                                     ping_loss_from_output,
                                     ping_median_us,
                                     port_stats,
                                     start_ping,
                                     wait_ping,
)

__all__ = ["finish_ping", "iperf3", "parse_iperf3", "ping_loss_from_output", "ping_median_us", "port_stats",
           "start_ping", "wait_ping"]
