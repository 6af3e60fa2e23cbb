#!/bin/sh
# Lab 8: the outage you staged, as testbed commands, in the order you ran them.
# Run it (or type its lines one by one): sudo sh lab-work/08-faults/outage.sh
# 'testbed lab check 8' grades the running testbed, not this file: this is your record.
set -e

# TODO 1 (step 2): 32 flow entries at srv1 (and their reverse entries), spread over the 8 path
# slots of each tunnel by their hash.
testbed exec red1 'for id in $(seq 8001 8016); do ping -n -c1 -W2 -e $id 192.168.1.13; ping -n -c1 -W2 -e $id 192.168.1.14; done >/dev/null'

# TODO 2 (step 3): SIGSTOP: the switches keep their flows, the agents their configuration.
testbed fault controller pause

# TODO 3 (step 4): after the pause, so no port status reaches the controller: leaf1's groups keep
# their spine1 bucket, and what leaf1 hashes onto spine1 for leaf2 is lost at spine1.
testbed fault link leaf2-spine1 down

# TODO 4 (step 6): the new agent starts from its cached configuration; srv4's neighbour table is
# empty and leaf2's ARP responder flows answer it.
testbed server restart srv4
