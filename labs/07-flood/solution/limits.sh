# Lab 7: the flow limits that contain the noisy VM, solved (labs/07-flood/README.md).
# Every VM without a limit of its own may own a quarter of a table (the project's default; the
# previous admin had raised it to the whole table). This contains red1 at srv1, where it floods,
# and red3 at srv3, where the flood arrives and is charged to red3 (the receiving side's owner).
sudo testbed net flow-limit --default-vm 256
