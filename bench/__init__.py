"""Benchmarks of the gate, measured in one run on this machine: ``python -m bench``.

Not part of ``make test``: nothing here asserts an absolute time. Each section prints a
table, and the run writes ``bench/RESULTS.md`` with the machine it ran on, the method and
every figure, with the issue's goals marked MET or MISSED.

Sections (``--only a,b,...``):

a. the Check service alone against a trivial always-OK servicer on the same gRPC stack;
b. end to end through Envoy: no authorization, Envoy's native ``jwt_authn``, this service;
c. added latency at a fixed request rate;
d. revocation: a key file deleted under load, until the first denial;
e. scale: 10,000 projects x 5 keys: start-up time, memory, one changed key in force.
"""
