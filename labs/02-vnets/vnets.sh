#!/bin/sh
# Lab 2: your run-time changes of the overlay, as testbed commands, in the order you ran them.
# Run it (or type its lines one by one): sudo sh lab-work/02-vnets/vnets.sh
# 'testbed lab check 2' grades the running testbed and your captures, not this file.
set -e

# TODO 1 (step 3): blue3 is in the wrong network. Remove it.
#   testbed net rm-vm NAME

# TODO 2 (step 3): add blue3 again, in network blue on srv3, with the address red3 has.
#   testbed net add-vm NAME --network NET --server SRV --address A.B.C.D
