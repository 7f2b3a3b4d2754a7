# Shared by image/usb, image/iso and image/pxe, sourced: the inputs and
# their checks, the kernel command line, the FAT time, little-endian pokes,
# and the unified kernel image (UKI) that UEFI boots. Not a program of its
# own.
# Before sourcing: `prog` (the script's name) and `tools` (its own tools);
# after: `media_start "$@"` checks the tools and reads DIR and the
# parameters, leaving `dir`, `out_arg`, `cmdline`, `epoch`, `fat_epoch`.

# Commands, then files (absolute paths), with their Debian packages.
media_tools=(
    "mformat:mtools" "mmd:mtools" "mcopy:mtools"
    "objcopy:binutils" "objdump:binutils" "grub-mkimage:grub-common"
    "dd:coreutils" "truncate:coreutils" "sha256sum:coreutils" "od:coreutils"
    "awk:mawk"
    "/usr/lib/systemd/boot/efi/systemd-bootx64.efi:systemd-boot-efi"
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub:systemd-boot-efi"
)

die() {
    echo "image/$prog: $*" >&2
    exit 1
}

# media_start ARG...: --tools prints the tools and exits; otherwise checks
# them, then reads DIR [OUT [PARAMETER...]].
media_start() {
    local entry tool f missing=()
    if [ "${1:-}" = --tools ]; then
        printf '%s\n' "${media_tools[@]}" "${tools[@]}"
        exit 0
    fi
    [ $# -ge 1 ] || die "usage: image/$prog DIR [OUT [PARAMETER...]]"
    export PATH="/usr/sbin:/sbin:$PATH"
    export LC_ALL=C TZ=UTC
    for entry in "${media_tools[@]}" "${tools[@]}"; do
        tool=${entry%%:*}
        case "$tool" in
            /*) [ -e "$tool" ] || missing+=("$tool (${entry#*:})") ;;
            *) command -v "$tool" >/dev/null 2>&1 || missing+=("$tool (${entry#*:})") ;;
        esac
    done
    [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]}; run ci/setup"

    dir=$1
    out_arg=${2:-}
    shift $(($# >= 2 ? 2 : 1))
    for f in vmlinuz initramfs os-release; do
        [ -f "$dir/$f" ] || die "$dir has no $f: build the image with image/build"
    done
    # The kernel parameters of every boot path.
    cmdline="console=tty0 console=ttyS0,115200 panic=10${*:+ $*}"
    case "$cmdline" in
        *[\"\\\$\;]*) die "kernel parameters with quotes, backslashes, \$ or ; are refused: $cmdline" ;;
    esac

    # FAT keeps local times from 1980 on: an earlier SOURCE_DATE_EPOCH (the
    # default 0) becomes 1980-01-02 00:00 UTC. mtools stamps what it
    # creates with SOURCE_DATE_EPOCH; mcopy -m keeps the files' own mtimes.
    epoch=${SOURCE_DATE_EPOCH:-0}
    fat_epoch=315619200
    [ "$epoch" -gt "$fat_epoch" ] && fat_epoch=$epoch
    export SOURCE_DATE_EPOCH=$fat_epoch
    export MTOOLS_SKIP_CHECK=1
}

# seed_of: a hash of the inputs, for identifiers that two builds of the
# same inputs share and two different images do not.
seed_of() {
    (sha256sum "$dir/vmlinuz" "$dir/initramfs" "$dir/os-release" | cut -d' ' -f1
        echo "$prog $cmdline $epoch") | sha256sum | cut -c1-64
}

# put FAT SOURCE DEST: copies SOURCE to DEST on the FAT image, stamped
# with the FAT time.
put() {
    touch -d "@$fat_epoch" "$2"
    mcopy -m -o -i "$1" "$2" "::$3"
}

# le N VALUE: VALUE as N little-endian bytes.
le() {
    local i out=""
    for ((i = 0; i < $1; i++)); do
        out+=$(printf '\\x%02x' $((($2 >> (8 * i)) & 255)))
    done
    printf '%b' "$out"
}
# poke FILE OFFSET N VALUE: writes VALUE as N bytes at OFFSET.
poke() {
    le "$3" "$4" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
# pe_stamp FILE: objcopy stamps a PE file with the time it ran. Put back
# the stub's own stamp (0) and recompute the checksum: the 16-bit words of
# the file (the checksum field counted as 0) summed with end-around carry,
# plus the file's length.
pe_stamp() {
    local pe sum
    pe=$(od -An -tu4 -j 60 -N 4 "$1" | tr -d ' ')
    poke "$1" $((pe + 8)) 4 0
    poke "$1" $((pe + 88)) 4 0
    sum=$(od -An -v -tu2 -w4096 "$1" | awk '{for (i = 1; i <= NF; i++) s += $i} END {printf "%.0f\n", s}')
    while [ $((sum >> 16)) -ne 0 ]; do
        sum=$(((sum & 0xffff) + (sum >> 16)))
    done
    poke "$1" $((pe + 88)) 4 $((sum + $(stat -c %s "$1")))
}

# uki TITLE OUT: a unified kernel image: systemd's EFI stub with the
# os-release (PRETTY_NAME=TITLE), the command line, the initramfs and the
# kernel as sections of its own, each placed after the stub's last section
# on a 4 KiB boundary (the stub's SectionAlignment is smaller and divides
# it).
align() { echo $((($1 + 4095) / 4096 * 4096)); }
uki() { # title, output file (work files go beside it)
    local stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
    local osrel="$2.osrel" cmd="$2.cmdline" stub_end=0 size vma end at args=()
    while read -r size vma; do
        end=$((16#$vma + 16#$size))
        [ "$end" -gt "$stub_end" ] && stub_end=$end
    done < <(objdump -h "$stub" | awk '$1 ~ /^[0-9]+$/ {print $3, $4}')
    [ "$stub_end" -gt 0 ] || die "no sections in $stub"
    {
        cat "$dir/os-release"
        echo "PRETTY_NAME=\"$1\""
    } >"$osrel"
    printf '%s' "$cmdline" >"$cmd"
    at=$(align "$stub_end")
    for section in ".osrel=$osrel" ".cmdline=$cmd" ".initrd=$dir/initramfs" ".linux=$dir/vmlinuz"; do
        args+=(--add-section "$section" --change-section-vma "${section%%=*}=$(printf '0x%x' "$at")")
        at=$(align $((at + $(stat -c %s "${section#*=}"))))
    done
    objcopy "${args[@]}" "$stub" "$2"
    pe_stamp "$2"
}
