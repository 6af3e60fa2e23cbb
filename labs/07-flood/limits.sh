# Lab 7: the flow limits that contain the noisy VM (labs/07-flood/README.md, step 4).
# One `testbed` command a line; run each of them on the lab's testbed as you write it, e.g.
#   sudo testbed net flow-limit --vm red1 300
# The check grades the running testbed (its limits, its counters, its connections), not this file:
# the file is your record of what you set, and what `testbed lab solve 7` applies for a teacher.
#
# TODO 1: a limit that keeps red1 (the noisy VM, on srv1) well below srv1's table of 1024 entries,
#         so that blue1's new connections still find room while red1 floods
#         (net flow-limit --vm NAME | --network NAME | --default-vm | --default-network LIMIT)
# TODO 2: would the same limit protect srv3, where the flood arrives? (which owner are those
#         entries charged to?) Choose between a VM's limit, its network's and the default.
