#!/bin/sh
# Lab 2: your run-time changes of the overlay, as testbed commands, in the order you ran them.
# Run it (or type its lines one by one): sudo sh lab-work/02-vnets/vnets.sh
# 'testbed lab check 2' grades the running testbed and your captures, not this file.
set -e

# TODO 1 (step 3): blue3 was in red (vif --list on srv3: vrf 100), on 192.168.1.23.
testbed net rm-vm blue3

# TODO 2 (step 3): the same address as red3, on the same server: blue's own routing instance.
testbed net add-vm blue3 --network blue --server srv3 --address 192.168.1.13
