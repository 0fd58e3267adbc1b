"""The emulated lab: real hosts, VMs and boards on one machine, for tests and the demo.

Hosts are network namespaces on a private bridge, each with its own mount namespace,
work-area filesystem and OpenSSH server; QEMU hosts run their own libvirtd; boards are
QEMU machines behind ser2net, an SD-card image and three kinds of power switch on a
flash station.  Nothing in the services knows that: they reach the lab as they would
reach real machines.  Driven by ``labfleet lab ...`` (see ``labfleet.cli.lab``).
"""
