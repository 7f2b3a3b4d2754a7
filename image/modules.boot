# Kernel modules /init loads on every boot, by name, before the agent
# starts. Their dependencies come along (modules.dep). Everything else the
# image holds is loaded when hardware asks for it (modules.hardware) or
# when the kernel asks /sbin/modprobe for it (nftables expressions).
btrfs
wireguard
tun
bridge
veth
macvlan
8021q
nf_tables
nft_chain_nat
nft_masq
nft_ct
