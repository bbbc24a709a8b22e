#!/usr/bin/env bash
# One-definition-rule check of the per-SIMD-path kernels.
#
# The files in EMBTAB_ISA_SOURCES (CMakeLists.txt) are compiled once per instruction set, with that
# path's -m flags. If such an object defines a symbol with external linkage that another object also
# defines (an inline function or template instantiation from a shared header, a standard-library
# template...), the linker keeps one copy for all: the scalar path may then run AVX-512 code on a
# CPU without it. So every global or weak symbol that a per-path object defines must live in that
# path's namespace (embtab::scalar::, embtab::avx2::, embtab::avx512::), where no other object can
# define it, and no symbol may be defined both by a per-path object and by another path or the
# baseline-compiled rest of the module.
#
# Which functions the compiler happened to inline is luck (an inlined call leaves no symbol), so the
# check first builds the per-path objects with -fno-inline, into build/odr: every function they call
# (but the always_inline ones) is then emitted out of line, as any compiler may choose to do; then
# it checks the objects of every other build under build/ (what the wheels ship).
#
#   bash ci/check_odr.sh              # stress build + every build/*/ with per-path objects
#   bash ci/check_odr.sh DIR [DIR...] # only these CMake build directories
set -euo pipefail
cd "$(dirname "$0")/.."

# Not code: a pointer to the C++ exception personality routine, the same in every object.
allowed_outside_namespace='^DW\.ref\.__gxx_personality_v0$'

# Prints the lines of $1 (embtab's own symbols first), at most 40 of them.
show() {
  { grep 'embtab::' <<<"$1" || true; grep -v 'embtab::' <<<"$1" || true; } | head -n 40
  local n
  n=$(echo "$1" | wc -l)
  if [ "$n" -gt 40 ]; then echo "  ... and $((n - 40)) more"; fi
  return 0
}

# check_build DIR: checks the per-path objects under DIR/CMakeFiles/embtab_isa_<path>.dir and the
# baseline objects of DIR/CMakeFiles/_core.dir. Prints the offending symbols; returns 1 if any.
check_build() {
  local dir=$1 table failed=0
  table=$(mktemp)
  # One line per defined external symbol: group (the path, or "baseline"), nm type, object, name.
  local objdir group obj
  for objdir in "$dir"/CMakeFiles/embtab_isa_*.dir "$dir"/CMakeFiles/_core.dir; do
    [ -d "$objdir" ] || continue
    group=$(basename "$objdir" .dir)
    group=${group#embtab_isa_}
    [ "$group" = _core ] && group=baseline
    while IFS= read -r -d '' obj; do
      nm -g --defined-only -C "$obj" |
        awk -v g="$group" -v o="${obj#"$dir"/}" '{ t = $2; sub(/^[0-9a-fA-F]* *[A-Za-z] /, ""); print g "\t" t "\t" o "\t" $0 }'
    done < <(find "$objdir" -name '*.o' -print0)
  done >"$table"
  if ! grep -qv $'^baseline\t' "$table"; then
    echo "check_odr: no per-path objects under $dir" >&2
    rm -f "$table"
    return 1
  fi

  # 1. Every external symbol of a per-path object is in its path's namespace.
  local outside
  outside=$(awk -F'\t' -v allowed="$allowed_outside_namespace" '
    $1 != "baseline" && index($4, "embtab::" $1 "::") == 0 && $4 !~ allowed { print "  " $1 ": " $2 " " $4 }' "$table" |
    sort -u)
  if [ -n "$outside" ]; then
    echo "check_odr: $dir: per-path objects define $(echo "$outside" | wc -l) external symbols outside their path's" \
         "namespace (the linker may merge them with another path's or the baseline's copy):"
    show "$outside"
    failed=1
  fi

  # 2. No symbol is defined by objects of two groups (two paths, or a path and the baseline).
  local shared
  shared=$(awk -F'\t' -v allowed="$allowed_outside_namespace" '
    $4 !~ allowed { if (!(($4, $1) in seen)) { seen[$4, $1] = 1; groups[$4] = groups[$4] " " $1; n[$4]++ } }
    END { for (s in n) if (n[s] > 1) print "  " s "   (defined by:" groups[s] ")" }' "$table" | sort)
  if [ -n "$shared" ]; then
    echo "check_odr: $dir: $(echo "$shared" | wc -l) symbols defined in more than one instruction set (or in one and" \
         "the baseline):"
    show "$shared"
    failed=1
  fi

  # 3. The entry points (strong functions in a path's namespace) are the same for every path.
  local isa entries reference="" reference_isa=""
  for isa in $(awk -F'\t' '$1 != "baseline" { print $1 }' "$table" | sort -u); do
    entries=$(awk -F'\t' -v i="$isa" '$1 == i && $2 == "T" { s = $4; sub("embtab::" i "::", "embtab::<path>::", s); print s }' "$table" | sort -u)
    if [ -z "$reference_isa" ]; then
      reference=$entries
      reference_isa=$isa
    elif [ "$entries" != "$reference" ]; then
      echo "check_odr: $dir: path $isa defines other entry points than path $reference_isa:"
      diff <(echo "$reference") <(echo "$entries") | sed 's/^/  /' || true
      failed=1
    fi
  done

  if [ "$failed" = 0 ]; then
    echo "check_odr: $dir: OK ($(awk -F'\t' '$1 != "baseline"' "$table" | wc -l) external symbols in per-path objects," \
         "all in their path's namespace; entry points:" $(echo "$reference" | tr '\n' ' ') ")"
  fi
  rm -f "$table"
  return "$failed"
}

dirs=("$@")
if [ ${#dirs[@]} -eq 0 ]; then
  stress=build/odr
  cmake -S . -B "$stress" -DEMBTAB_ISA_OBJECTS_ONLY=ON -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_FLAGS=-fno-inline >"$stress.log" 2>&1 ||
    { cat "$stress.log"; exit 1; }
  cmake --build "$stress" -j "$(nproc)" >>"$stress.log" 2>&1 || { cat "$stress.log"; exit 1; }
  dirs=("$stress")
  for d in build/*/; do
    d=${d%/}
    [ "$d" != "$stress" ] && compgen -G "$d/CMakeFiles/embtab_isa_*.dir" >/dev/null && dirs+=("$d")
  done
fi

status=0
for d in "${dirs[@]}"; do
  check_build "$d" || status=1
done
exit "$status"
