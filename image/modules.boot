# Kernel modules /init loads on every boot, by name, before the agent
# starts. Everything else is loaded when it is first needed: drivers by
# the modalias of the hardware present (image/modules.hardware), and the
# rest by the kernel itself, which calls /sbin/modprobe for a filesystem
# on mount (btrfs), a link type on creation (bridge, veth, macvlan, vlan,
# wireguard) and nftables on first use. Loading them all up front cost
# seconds of boot under QEMU.
#
# tun: /dev/net/tun appears only once the module is loaded (no udev to
# make the node), and boringtun opens it.
tun
# evdev: the power button's /dev/input/event* (the ACPI `button` driver
# comes with the hardware's modaliases), which the agent reads.
evdev
# sd_mod: claims each SCSI disk (SATA, SAS, USB, virtio-scsi) as it
# appears, whenever its controller finds it; loaded by alias, it would
# only claim the disks present when /init looked.
sd_mod
