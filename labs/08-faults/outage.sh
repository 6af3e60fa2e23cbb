#!/bin/sh
# Lab 8: the outage you staged, as testbed commands, in the order you ran them.
# Run it (or type its lines one by one): sudo sh lab-work/08-faults/outage.sh
# 'testbed lab check 8' grades the running testbed, not this file: this is your record.
set -e

# TODO 1 (step 2): while everything works, establish the flows that must survive the outage:
# 16 pings from red1 to red3 and 16 to red4, ICMP identifiers 8001 to 8016 (ping -e ID), one
# echo request each. The same identifier to the same VM is the same flow (the same flow entry).
#   testbed exec red1 'for id in $(seq 8001 8016); do ping -n -c1 -W2 -e $id ...; done'

# TODO 2 (step 3): take the controller away, so that nothing can reprogram the fabric.
#   testbed fault controller ...

# TODO 3 (step 4): cut the link between spine1 and leaf2. The order of TODO 2 and TODO 3 matters.
#   testbed fault link NODE-NODE down

# TODO 4 (step 6): reboot srv4 while the controller is still away.
#   testbed server restart ...
