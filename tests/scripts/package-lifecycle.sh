#!/bin/sh
# Install, upgrade, remove and purge a .deb for real, in a throwaway copy of this machine: an
# overlay of / whose writes land on a tmpfs, inside the private mount namespace the caller made
# (`unshare -m`), so nothing reaches the host. Used by tests/tests/operations.rs.
#
#   package-lifecycle.sh SCRATCH_DIR PACKAGE.deb NAME CONFFILE
#
# Exit 99: the overlay cannot be set up here (no privilege, no overlayfs): the test skips.
# Otherwise it prints one `== STEP` header per step and what an operator would look at; the
# test asserts on that text. No systemd runs in the copy: `systemctl` and `deb-systemd-invoke`
# are replaced by stand-ins that print what the maintainer scripts asked of them.
set -u
scratch=$1 deb=$2 name=$3 conffile=$4

mount -t tmpfs tmpfs "$scratch" 2>/dev/null || exit 99
mkdir "$scratch/upper" "$scratch/work" "$scratch/root" "$scratch/upper/tmp"
# The package goes in with the copy: the caller's directory may be on another file system,
# which an overlay of / does not show.
cp "$deb" "$scratch/upper/tmp/package.deb" || exit 1
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" \
    "$scratch/root" 2>/dev/null || exit 99
mount --bind /proc "$scratch/root/proc" && mount --bind /dev "$scratch/root/dev" || exit 99

exec chroot "$scratch/root" /bin/sh -s "$name" "$conffile" <<'INSIDE'
set -u
exec 2>&1
deb=/tmp/package.deb name=$1 conffile=$2
mkdir -p /run/systemd/system
# On stderr: the maintainer scripts send the tools' stdout to /dev/null.
for tool in systemctl deb-systemd-invoke; do
    path=$(command -v "$tool" || echo "/usr/bin/$tool")
    printf '#!/bin/sh\necho "%s $*" >&2\n' "$tool" > "$path"
    chmod 0755 "$path"
done
echo "== install"
dpkg -i "$deb" 2>&1
echo "== state"
getent passwd "$name" >/dev/null && echo "user $name exists"
stat -c '%A %U:%G %n' "/var/lib/$name" "/etc/$name" "$conffile" 2>&1
ls "/etc/systemd/system/multi-user.target.wants/$name.service" 2>/dev/null \
    && echo "enabled by symlink"
echo "== check"
"/usr/bin/$name" check --config "$conffile" 2>&1
echo "exit $?"
echo "== upgrade"
echo "# edited by the operator" >> "$conffile"
mkdir -p "/var/lib/$name/store" && echo pending > "/var/lib/$name/store/kept"
dpkg -i "$deb" 2>&1
grep -c "edited by the operator" "$conffile" | sed 's/^/operator edits kept: /'
echo "== remove"
dpkg -r "$name" 2>&1
ls "/var/lib/$name/store/kept" "$conffile" 2>&1
getent passwd "$name" >/dev/null && echo "user $name exists"
echo "== purge"
dpkg -P "$name" 2>&1
ls -d "/var/lib/$name" "$conffile" 2>&1
getent passwd "$name" >/dev/null || echo "user $name gone"
echo "== end"
INSIDE
