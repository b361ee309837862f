#!/usr/bin/env bash
# Build a small busybox image offline, as a `docker save` archive that `berth load -i` reads.
# Usage: mkimage.sh OUT.tar NAME:TAG [DIR_TO_ADD]
#   The rootfs is Debian's static busybox with its applet links, /etc/passwd and /etc/group
#   (root, nobody and an `app` user), and /www/index.html. DIR_TO_ADD is copied over the root.
# Needs: busybox-static (/bin/busybox), tar, sha256sum.
set -euo pipefail
out=$1; ref=$2; extra=${3:-}
[ -x /bin/busybox ] || { echo "mkimage: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,www,tmp,root,home/app,var/www,data}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
ln -s bin "$root/sbin"
mkdir -p "$root/usr"; ln -s ../bin "$root/usr/bin"; ln -s ../bin "$root/usr/sbin"
cat > "$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$root/etc/group" <<'G'
root:x:0:
wheel:x:10:app
app:x:1000:
nogroup:x:65534:
G
echo "hello from berth" > "$root/www/index.html"
chown 1000:1000 "$root/home/app"
if [ -n "$extra" ]; then cp -a "$extra"/. "$root"/; fi
img=$work/img
mkdir -p "$img"
(cd "$root" && tar --sort=name --numeric-owner --mtime=@0 -cf "$img/layer.tar" .)
diff=$(sha256sum "$img/layer.tar" | cut -d' ' -f1)
mkdir -p "$img/$diff"
mv "$img/layer.tar" "$img/$diff/layer.tar"
cat > "$img/config.json" <<C
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff"]},"history":[{"created_by":"berth examples/mkimage.sh"}]}
C
cfg=$(sha256sum "$img/config.json" | cut -d' ' -f1)
mv "$img/config.json" "$img/$cfg.json"
repo=${ref%:*}; tag=${ref##*:}
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$cfg" "$ref" "$diff" > "$img/manifest.json"
printf '{"%s":{"%s":"%s"}}\n' "$repo" "$tag" "$diff" > "$img/repositories"
(cd "$img" && tar --sort=name --mtime=@0 -cf - .) > "$out"
