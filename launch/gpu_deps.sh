#!/usr/bin/env bash
# gpu_deps.sh — run on this Debian 12 machine: unpack what a bare CUDA machine lacks to build, test and run ddp-cnn
# into .deps/ (git-ignored), so that it can be carried there: Open MPI 4.1 with the libraries it loads, libinih,
# libcjson, cmocka, OpenBLAS, zlib's headers, pkg-config, and Fashion-MNIST. Writes .deps/env.sh, which the GPU
# machine sources (launch/gpu_check.sh does): see docs/gpu.md.
#   ./launch/gpu_deps.sh [--no-data] [--no-verify] [--check] [--bare] [--build]
# --no-data    leave Fashion-MNIST out (.deps/data, 30 MiB)
# --no-verify  skip the check
# --check      only check the existing .deps (no download)
# --bare       check inside a private mount namespace in which this machine's own copies of these packages (and
#              ssh, xz) are hidden: the nearest this machine gets to a bare GPU machine (root, unshare, overlayfs)
# --build      in the check, also build (CUDA off) and run the whole test suite against the copy
# The packages travel as one archive, .deps/root.tar.xz (12 MiB; 64 MiB unpacked), which the first `. .deps/env.sh`
# unpacks into .deps/root. So don't source .deps/env.sh on this machine: .deps/root would then travel too (this
# script removes it). The check copies .deps to another folder, sources env.sh there and requires that mpirun,
# mpicc, an MPI program run directly and on 2 ranks (with nothing on stderr), pkg-config and a CMake configure
# (CUDA off) all use the copy. Needs apt-get with updated package lists (not root: apt-get download), dpkg-deb, xz,
# objdump.
set -euo pipefail
self=$(readlink -f "$0")  # --help and re-runs read it after the cd below
cd "$(dirname "$self")/.."
repo=$PWD
deps=$repo/.deps
ma=usr/lib/x86_64-linux-gnu
with_data=1 verify=1 make=1 bare=0 build=0
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --no-data) with_data=0; shift ;;
    --no-verify) verify=0; shift ;;
    --check) make=0; shift ;;
    --bare) bare=1; shift ;;
    --build) build=1; shift ;;
    -h|--help) sed -n '2,18p' "$self"; exit 0 ;;
    *) echo "gpu_deps.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

# The shared-library closure (ldd of every ELF file, Open MPI's and PMIx's plug-ins included) of Open MPI, OpenBLAS,
# libinih, libcjson, cmocka and pkgconf, plus the headers and pkg-config files the build needs; minus what every
# glibc-based CUDA image has (libc6, libgcc-s1, libstdc++6) and libopenmpi-dev's Fortran/PMIx/hwloc -dev needs.
PACKAGES=(
  openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev
  libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libmunge2
  libfabric1 libucx0 libibverbs1 ibverbs-providers librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2
  libpsm-infinipath1 libnuma1
  libinih1 libinih-dev libcjson1 libcjson-dev libcmocka0 libcmocka-dev
  libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0
  zlib1g zlib1g-dev pkgconf pkgconf-bin libpkgconf3
  libatomic1 libuuid1 libudev1
)
# Libraries a CUDA image usually has already, often newer: kept under root/fallback/<soname>/, which env.sh puts
# on LD_LIBRARY_PATH only for a soname the machine lacks, so they never shadow the system's own.
FALLBACK=(zlib1g libgfortran5 libquadmath0 libatomic1 libuuid1 libudev1 libnuma1)
FMNIST=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/stage/root
fail() { echo "gpu_deps.sh: $*" >&2; exit 1; }
mib() { du -s --apparent-size --block-size=1M "$@" | cut -f1; }

# ---------------------------------------------------------------------------------------------------------
# The tree: download, unpack, fix links, pkg-config files, fallback libraries

# alt LINK TARGET: what a package's postinst does with update-alternatives, as a relative link.
alt() {
  [ -e "$root/$2" ] || fail "expected $2 in the unpacked packages"
  mkdir -p "$(dirname "$root/$1")"
  ln -sfnr "$root/$2" "$root/$1"
}

unpack_packages() {
  local deb b l t
  mkdir -p "$work/debs" "$root"
  (cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root "${PACKAGES[@]}" >"$work/apt.log" 2>&1) ||
    { cat "$work/apt.log" >&2; fail "apt-get download failed (run apt-get update first?)"; }
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # zlib1g and libnl ship under /lib: merge it into /usr/lib, so one library folder serves all.
  if [ -d "$root/lib" ]; then
    cp -a "$root/lib/." "$root/usr/lib/"
    rm -rf "${root:?}/lib"
  fi
  rm -rf "$root"/usr/share/{doc,man,info,lintian,bug,aclocal} "${root:?}/$ma/fortran"
  find "$root" \( -name '*.a' -o -name '*.la' -o -name 'liblapack*' -o -name 'lapack-openblas.pc' \) -delete

  for b in mpirun mpiexec mpicc mpicxx mpic++ mpiCC mpif77 mpif90 mpifort; do alt "usr/bin/$b" "usr/bin/$b.openmpi"; done
  alt usr/include/x86_64-linux-gnu/mpi "$ma/openmpi/include"
  alt "$ma/libmpi.so" "$ma/openmpi/lib/libmpi.so"
  alt "$ma/libmpi++.so" "$ma/openmpi/lib/libmpi_cxx.so"
  for l in libopenblas.so.0 libopenblas.so libblas.so.3 libblas.so; do alt "$ma/$l" "$ma/openblas-pthread/$l"; done
  alt "$ma/pkgconfig/openblas.pc" "$ma/openblas-pthread/pkgconfig/openblas.pc"
  alt "$ma/libpsm_infinipath.so.1" usr/lib/libpsm1/libpsm_infinipath.so.1.16

  # Absolute links (libz.so -> /lib/...) point inside the tree.
  while IFS= read -r -d '' l; do
    t=$(readlink "$l")
    case $t in /*) ;; *) continue ;; esac
    t=${t#/}
    case $t in lib/*) t=usr/$t ;; esac
    if [ -e "$root/$t" ]; then ln -sfnr "$root/$t" "$l"; else rm -f "$l"; fi
  done < <(find "$root" -type l -print0)
}

# Each shared object of the FALLBACK packages moves to fallback/<soname>/; their soname links go; development links
# (libz.so) point at the moved file.
move_fallback_libs() {
  local p debf path soname l target
  for p in "${FALLBACK[@]}"; do
    debf=("$work/debs/${p}"_*.deb)
    while read -r path; do
      path=${path#./}
      case $path in lib/*) path=usr/$path ;; esac
      if [ ! -f "$root/$path" ] || [ -L "$root/$path" ]; then continue; fi
      soname=$(objdump -p "$root/$path" | awk '$1 == "SONAME" { print $2 }')
      [ -n "$soname" ] || continue
      mkdir -p "$root/fallback/$soname"
      mv "$root/$path" "$root/fallback/$soname/"
      [ "$soname" = "${path##*/}" ] || ln -sfn "${path##*/}" "$root/fallback/$soname/$soname"
    done < <(dpkg-deb -c "${debf[0]}" | awk '$1 ~ /^-/ && $6 ~ /\.so\./ { print $6 }')
  done
  while IFS= read -r -d '' l; do
    [ -e "$l" ] && continue
    if [ -d "$root/fallback/${l##*/}" ]; then rm -f "$l"; continue; fi
    target=$(find "$root/fallback" -name "$(basename "$(readlink "$l")")" -print -quit)
    if [ -n "$target" ]; then ln -sfnr "$target" "$l"; else rm -f "$l"; fi
  done < <(find "$root/usr" -type l -print0)
}

# pkg-config files: a copy in place of each link (${pcfiledir} is the folder the file was found in), and /usr made
# relative to the file's own folder, so that pkg-config (pkgconf or freedesktop's) finds the tree wherever it lies.
relocate_pc_files() {
  local pc real rel
  while IFS= read -r -d '' pc; do
    real=$(readlink -f "$pc")
    rm -f "$pc"
    cp "$real" "$pc"
  done < <(find "$root" -name '*.pc' -type l -print0)
  while IFS= read -r -d '' pc; do
    rel=$(realpath --relative-to="$(dirname "$pc")" "$root")
    sed -i -E "s#(^|[=[:space:]]|-I|-L)/usr(/|[[:space:]]|\$)#\1\${pcfiledir}/$rel/usr\2#g" "$pc"
  done < <(find "$root" -name '*.pc' -print0)
}

# Fashion-MNIST (the default configs' data) from dataset-fashion-mnist: the installed copy, else the package.
copy_data() {
  local src=/usr/share/datasets/fashion-mnist have=1 f
  for f in "${FMNIST[@]}"; do [ -f "$src/$f" ] || have=0; done
  if [ "$have" -eq 0 ]; then
    (cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root dataset-fashion-mnist >>"$work/apt.log" 2>&1) ||
      { cat "$work/apt.log" >&2; fail "apt-get download dataset-fashion-mnist failed"; }
    dpkg-deb -x "$work"/debs/dataset-fashion-mnist_*.deb "$work/ds"
    src=$work/ds/usr/share/datasets/fashion-mnist
  fi
  mkdir -p "$deps/data/fashion-mnist"
  for f in "${FMNIST[@]}"; do cp -u "$src/$f" "$deps/data/fashion-mnist/"; done
}

# ---------------------------------------------------------------------------------------------------------
# env.sh

write_env() {
  cat >"$deps/env.sh" <<'EOF'
# .deps/env.sh — written by launch/gpu_deps.sh. Source it with bash: `. .deps/env.sh`.
# Puts the Debian 12 packages unpacked under .deps/root first on PATH, LD_LIBRARY_PATH, pkg-config's and CMake's
# search paths, and points the relocated Open MPI 4.1 (OPAL_*) and PMIx (PMIX_*) at their files there. Every path
# is computed here from this file's location, so the folder works wherever it is carried.
# Needs glibc >= 2.36 (Debian 12's libevent calls arc4random): e.g. Debian 12, Ubuntu 24.04.
_ddp_d=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
_ddp_r=$_ddp_d/root
_ddp_ma=$_ddp_r/usr/lib/x86_64-linux-gnu

# The tree travels as one archive, to keep the carried folder small: unpacked here on first use (and again when the
# archive changes). xz, else Python's lzma.
_ddp_sum=$(cksum <"$_ddp_d/root.tar.xz")
if [ "$(cat "$_ddp_r/.archive" 2>/dev/null)" != "$_ddp_sum" ]; then
  rm -rf "$_ddp_r" "$_ddp_r.tmp"
  mkdir -p "$_ddp_r.tmp"
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$_ddp_d/root.tar.xz" | tar -C "$_ddp_r.tmp" -xf -
  else
    python3 -c 'import sys, tarfile
kw = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **kw)' "$_ddp_d/root.tar.xz" "$_ddp_r.tmp"
  fi && echo "$_ddp_sum" >"$_ddp_r.tmp/root/.archive" && mv "$_ddp_r.tmp/root" "$_ddp_r" && rmdir "$_ddp_r.tmp" ||
    echo "env.sh: could not unpack $_ddp_d/root.tar.xz into $_ddp_r" >&2
fi

# A library the machine already has is taken from the machine; root/fallback/<soname> only fills a gap.
_ddp_have() {
  local d dirs
  IFS=: read -ra dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}" /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64; do
    [ -n "$d" ] && [ -e "$d/$1" ] && return 0
  done
  { ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | awk -v s="$1" '$1 == s { f = 1 } END { exit !f }'
}
_ddp_lp=$_ddp_ma:$_ddp_ma/openmpi/lib:$_ddp_ma/openblas-pthread
for _ddp_f in "$_ddp_r"/fallback/*; do
  [ -d "$_ddp_f" ] && ! _ddp_have "${_ddp_f##*/}" && _ddp_lp=$_ddp_lp:$_ddp_f
done

if [ "${DDP_DEPS:-}" != "$_ddp_d" ]; then   # sourcing twice adds nothing twice
  export DDP_DEPS=$_ddp_d
  export DDP_DEPS_BASE_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}   # for programs that should not see these libraries
  export PATH=$_ddp_r/usr/bin${PATH:+:$PATH}
  export LD_LIBRARY_PATH=$_ddp_lp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export CMAKE_PREFIX_PATH=$_ddp_r/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export PKG_CONFIG_PATH=$_ddp_ma/pkgconfig:$_ddp_ma/openblas-pthread/pkgconfig:$_ddp_r/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
fi
export PKG_CONFIG=$_ddp_r/usr/bin/pkg-config
# Open MPI finds its plug-ins, help files and wrapper data from OPAL_PREFIX; /etc/openmpi (Debian's MCA defaults,
# which leave out the ucx/ofi/openib transports, and the default hostfile) lies outside that prefix.
export OPAL_PREFIX=$_ddp_r/usr
export OPAL_SYSCONFDIR=$_ddp_r/etc/openmpi
# PMIx (Debian's lives in its own prefix) has absolute folders that its prefix alone does not move, and its MCA
# file names the absolute plug-in folder.
export PMIX_PREFIX=$_ddp_ma/pmix2 PMIX_EXEC_PREFIX=$_ddp_ma/pmix2
export PMIX_LIBDIR=$_ddp_ma/pmix2/lib PMIX_PKGLIBDIR=$_ddp_ma/pmix2/lib/pmix
export PMIX_DATADIR=$_ddp_ma/pmix2/share PMIX_PKGDATADIR=$_ddp_ma/pmix2/share/pmix PMIX_SYSCONFDIR=$_ddp_ma/pmix2/share
export PMIX_MCA_mca_base_component_path=$_ddp_ma/pmix2/lib/pmix
export IBV_CONFIG_DIR=$_ddp_r/etc/libibverbs.d
# mpirun refuses to start without an ssh/rsh launcher even when every rank is local; `false` is never called then.
if ! command -v ssh >/dev/null 2>&1 && ! command -v rsh >/dev/null 2>&1; then
  export OMPI_MCA_plm_rsh_agent=false
fi
if [ -d "$_ddp_d/data/fashion-mnist" ]; then export DDP_FMNIST_DIR=$_ddp_d/data/fashion-mnist; fi
unset -f _ddp_have
unset _ddp_d _ddp_r _ddp_ma _ddp_f _ddp_lp _ddp_sum
EOF
}

# ---------------------------------------------------------------------------------------------------------
# The check

# Inside `unshare -m`: overlays on /usr and /etc, in which this machine's own copies of the packages (those of
# FALLBACK that a CUDA image surely has excepted), ssh and xz are deleted.
hide_system() {
  local keep=" zlib1g libatomic1 libuuid1 libudev1 " p f
  mkdir -p "$work"/ovl/{usr,usr.w,etc,etc.w}
  mount -t overlay overlay -o "lowerdir=/usr,upperdir=$work/ovl/usr,workdir=$work/ovl/usr.w" /usr
  mount -t overlay overlay -o "lowerdir=/etc,upperdir=$work/ovl/etc,workdir=$work/ovl/etc.w" /etc
  for p in "${PACKAGES[@]}" pkg-config libpmix-dev libhwloc-dev libevent-dev libopenblas-dev libopenblas0 \
           libnuma-dev libibverbs-dev libgfortran-12-dev openssh-client xz-utils; do
    [[ $keep == *" $p "* ]] && continue
    while read -r f; do
      case $f in /usr/*|/etc/*|/lib/*|/bin/*|/sbin/*) ;; *) continue ;; esac
      if [ -L "$f" ] || [ -f "$f" ]; then rm -f "$f"; fi
    done < <(dpkg -L "$p" 2>/dev/null || true)
  done
  rm -rf /usr/lib/x86_64-linux-gnu/{openmpi,pmix2,openblas-pthread} /etc/openmpi /usr/share/openmpi
  ldconfig
  for f in mpirun mpicc ompi_info pkg-config ssh xz; do
    if command -v "$f" >/dev/null; then fail "--bare: could not hide $f"; fi
  done
  echo "gpu_deps.sh: --bare: this machine's Open MPI, PMIx, OpenBLAS, libinih, libcjson, cmocka, zlib headers, pkgconf, ssh, xz hidden"
}

check_copy() {
  local moved=$work/elsewhere/.deps
  mkdir -p "$moved"
  cp -a "$deps/root.tar.xz" "$deps/env.sh" "$moved/"
  [ -d "$deps/data" ] && cp -a "$deps/data" "$moved/"
  (
    # shellcheck source=/dev/null
    . "$moved/env.sh"
    ok() { echo "  ok  $*"; }
    under() { case "$2" in *"$moved"*) ok "$1 -> $2" ;; *) fail "$1 is not from the relocated copy: $2" ;; esac; }
    quiet() { [ ! -s "$2" ] || { cat "$2" >&2; fail "$1 wrote to stderr"; }; }
    echo "gpu_deps.sh: checking a copy at $moved"
    [ -f "$moved/root/.archive" ] || fail "env.sh did not unpack root.tar.xz"
    under mpirun "$(command -v mpirun)"
    mpirun --version >/dev/null || fail "relocated mpirun --version failed"
    ok "mpirun --version: $(mpirun --version | head -1)"
    under "ompi_info prefix" "$(ompi_info --parsable --path prefix)"
    under "ompi_info pkglibdir" "$(ompi_info --parsable --path pkglibdir)"
    cat >"$work/hello.c" <<'C'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int r, n, s = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    MPI_Allreduce(&r, &s, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d sum %d\n", r, n, s);
    MPI_Finalize();
    return 0;
}
C
    mpicc -o "$work/hello" "$work/hello.c" || fail "relocated mpicc failed"
    under "hello: libmpi" "$(ldd "$work/hello" | awk '/libmpi\.so/ { print $3 }')"
    out=$("$work/hello" 2>"$work/err") || { cat "$work/err" >&2; fail "hello run directly (singleton) failed"; }
    quiet "hello run directly" "$work/err"
    [ "$out" = "rank 0 of 1 sum 0" ] || fail "unexpected output of hello: $out"
    ok "hello run directly (singleton MPI_Init)"
    mpi=(mpirun -np 2 --oversubscribe --bind-to none --mca btl "self,vader")
    [ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
    out=$("${mpi[@]}" "$work/hello" 2>"$work/err") || { cat "$work/err" >&2; fail "mpirun -np 2 hello failed"; }
    quiet "mpirun -np 2 hello" "$work/err"
    [ "$(grep -c 'of 2 sum 1$' <<<"$out")" -eq 2 ] || fail "unexpected output of mpirun -np 2 hello: $out"
    ok "mpirun -np 2 hello (MPI_Allreduce)"
    for m in inih libcjson cmocka openblas; do
      under "pkg-config $m $(pkg-config --modversion "$m")" "$(pkg-config --cflags --libs "$m")"
    done
    cmake -S "$repo" -B "$work/build" -DTRAINER_CUDA=OFF >"$work/cmake.log" 2>&1 ||
      { tail -30 "$work/cmake.log" >&2; fail "cmake configure (CUDA off) failed"; }
    for k in MPIEXEC_EXECUTABLE MPI_mpi_LIBRARY pkgcfg_lib_OPENBLAS_openblas pkgcfg_lib_INIH_inih \
             pkgcfg_lib_CJSON_cjson pkgcfg_lib_CMOCKA_cmocka ZLIB_INCLUDE_DIR; do
      under "cmake $k" "$(grep "^$k:" "$work/build/CMakeCache.txt" | cut -d= -f2-)"
    done
    if [ "$build" -eq 1 ]; then
      cmake --build "$work/build" -j2 >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; fail "build failed"; }
      under "trainer: libopenblas" "$(ldd "$work/build/trainer" | awk '/libopenblas/ { print $3 }')"
      # The tests and configs read Fashion-MNIST at its Debian path: in --bare, that is the copy's.
      if [ -n "${DDP_GPU_DEPS_HIDDEN:-}" ] && [ -n "${DDP_FMNIST_DIR:-}" ]; then
        mkdir -p /usr/share/datasets
        rm -rf /usr/share/datasets/fashion-mnist
        ln -s "$DDP_FMNIST_DIR" /usr/share/datasets/fashion-mnist
      fi
      ctest --test-dir "$work/build" --output-on-failure -j2 >"$work/ctest.log" 2>&1 ||
        { tail -60 "$work/ctest.log" >&2; fail "ctest failed"; }
      ok "$(grep 'tests passed' "$work/ctest.log")"
    fi
  )
  echo "gpu_deps.sh: the relocated copy works"
}

# ---------------------------------------------------------------------------------------------------------

if [ -n "${DDP_GPU_DEPS_HIDDEN:-}" ]; then   # the --bare re-run, inside its mount namespace
  hide_system
  check_copy
  exit 0
fi

if [ "$make" -eq 1 ]; then
  unpack_packages
  move_fallback_libs
  relocate_pc_files
  mkdir -p "$deps"
  rm -rf "$deps/root" "$deps/root.tar.xz"
  tar -C "$work/stage" -cf - root | xz -T0 -6 >"$deps/root.tar.xz.tmp"
  mv "$deps/root.tar.xz.tmp" "$deps/root.tar.xz"
  if [ "$with_data" -eq 1 ]; then copy_data; else rm -rf "$deps/data"; fi
  write_env
  echo "gpu_deps.sh: ${#PACKAGES[@]} packages in .deps/root.tar.xz ($(mib "$deps/root.tar.xz") MiB; $(mib "$root") MiB unpacked by env.sh)"
fi
if [ ! -f "$deps/root.tar.xz" ] || [ ! -f "$deps/env.sh" ]; then fail "no .deps/root.tar.xz or .deps/env.sh: run without --check"; fi
[ -d "$deps/data" ] && echo "gpu_deps.sh: Fashion-MNIST in .deps/data ($(mib "$deps/data") MiB)"
[ -d "$deps/root" ] && echo "gpu_deps.sh: warning: .deps/root exists (env.sh was sourced here): it would travel too; rerun without --check"
echo "gpu_deps.sh: .deps: $(mib "$deps") MiB to carry"

[ "$verify" -eq 1 ] || exit 0
if [ "$bare" -eq 1 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null; then fail "--bare needs root and unshare"; fi
  DDP_GPU_DEPS_HIDDEN=1 unshare -m bash "$self" "${args[@]}"
else
  check_copy
fi
