#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (as root):
#   bash tools/bootstrap.sh demo   install everything, then run the main job (the demo)
#   bash tools/bootstrap.sh demo debian   the same on a real Debian 12 mailhost: a full 12 -> 13
#                                          release upgrade on the twin (~45 min; docs/lab.md)
#   bash tools/bootstrap.sh demo debian-ansible   the same upgrade by playbooks/debian13-ansible.yml
#   bash tools/bootstrap.sh test   install everything, then run the whole test suite
#   bash tools/bootstrap.sh setup  only install (apt packages, .venv, pip install -e .[test])
# Safe to re-run: installed packages and an existing venv are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # build libvirt-python from source
  libvirt-dev pkg-config gcc
  # the lab: libvirtd + QEMU (TCG), guest image parts, networking
  qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  linux-image-amd64 busybox-static dropbear-bin rsync openssh-client openssh-sftp-server e2fsprogs
  iproute2 arping util-linux
  # the client hold (issue 14): libvirt's nwfilter driver runs iptables/ip6tables/ebtables (this
  # package gives all three, nft variants; install it before libvirtd starts)
  iptables
  # a real OpenSSH sshd for the sync-key tests (started by the tests on loopback, by pid; the
  # image's policy-rc.d keeps apt from starting the system one)
  openssh-server
  # the Debian lab guest: debootstrap on the host, through the lab's own apt-cacher-ng (started by
  # the lab on 127.0.0.1:3142 by pid; policy-rc.d keeps apt from starting the system one)
  debootstrap apt-cacher-ng
)

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

setup() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  local python=""
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python=$candidate; break
    fi
  done
  [[ -n $python ]] || { echo "need Python >= 3.11 with venv" >&2; exit 2; }
  if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $python"
    "$python" -m venv .venv
  fi
  log "pip install -e .[test]"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
}

demo() {
  export PATH="$PWD/.venv/bin:$PATH"
  local state=state/demo py="$PWD/.venv/bin/python"
  log "a fresh lab (a previous demo left the upgraded twin serving as prod)"
  upgrader lab down >/dev/null
  rm -rf "$state"
  upgrader lab up
  log "100 mails into mailhost's spool from the client namespace"
  ip netns exec upg-client "$py" -m upgrader.lab.mailclient --count 100
  log "client traffic during the run: a mail every 50 ms, a TCP probe at 20 Hz"
  ip netns exec upg-client "$py" -m upgrader.lab.traffic --log "$PWD/$state.traffic.jsonl" --max-seconds 1800 \
    > "$state.traffic.json" &
  local traffic=$!
  log "upgrader start mailhost --plan lab-mailhost.yml"
  local rc=0
  upgrader --state-dir "$state" start mailhost --plan lab-mailhost.yml || rc=$?
  kill -TERM "$traffic" && wait "$traffic" || true
  "$py" -m upgrader.lab.traffic --report "$state.traffic.json"
  ((rc == 0)) || return "$rc"
  log "upgrader decommission mailhost   (normally after keep_old_for; now for the demo)"
  upgrader --state-dir "$state" decommission mailhost --yes
}

demo_debian() {  # [ansible]: the same upgrade by the Ansible plan (debian13-ansible.yml) pointed at the lab
  export PATH="$PWD/.venv/bin:$PATH"
  local state=state/demo-debian py="$PWD/.venv/bin/python" client=(ip netns exec upg-client "$PWD/.venv/bin/python")
  local plan=debian13.yml
  [[ ${1:-} != ansible ]] || state=state/demo-debian-ansible
  log "a fresh lab with the Debian 12 mailhost (systemd, Postfix, Dovecot IMAP)"
  upgrader lab down >/dev/null
  rm -rf "$state" "$state".*
  if [[ ${1:-} == ansible ]]; then
    log "debian13-ansible.yml pointed at the lab (source, ssh, staging, takeover as in debian13.yml)"
    plan="$PWD/$state.plan.yml"
    "$py" -m upgrader.lab.labplan playbooks/debian13-ansible.yml --like playbooks/debian13.yml --out "$plan"
  fi
  upgrader lab up --guest debian
  log "100 mails into alice's mailbox over SMTP from the client namespace; INBOX as an IMAP client sees it"
  "${client[@]}" -m upgrader.lab.mailclient --count 100
  "${client[@]}" -m upgrader.lab.imapcheck > "$state.imap-before.json"
  log "client traffic during the run: a mail every 0.5 s, a TCP probe at 20 Hz"
  # (20 mails a second, as in the LabOS demo, cost Postfix under TCG most of a core the twin's upgrade needs)
  "${client[@]}" -m upgrader.lab.traffic --interval 0.5 --log "$PWD/$state.traffic.jsonl" --max-seconds 3600 \
    > "$state.traffic.json" &
  local traffic=$!
  log "upgrader start mailhost --plan $plan   (Debian 12 -> 13 on the twin, then cutover)"
  local rc=0 started=$SECONDS
  upgrader --state-dir "$state" start mailhost --plan "$plan" || rc=$?
  kill -TERM "$traffic" && wait "$traffic" || true
  "$py" -m upgrader.lab.traffic --report "$state.traffic.json"
  ((rc == 0)) || return "$rc"
  log "the new prod, from the client's side: every accepted mail over IMAP, UIDVALIDITY kept"
  "${client[@]}" -m upgrader.lab.imapcheck \
    --before "$state.imap-before.json" --accepted "$state.traffic.json"
  log "figures"
  upgrader --state-dir "$state" show mailhost | sed -n '1,60p'
  "$py" -m upgrader.lab.figures --state "$state" --seconds $((SECONDS - started)) \
    --proxy-log "${UPGRADER_LAB_DIR:-/var/lib/upgrader-lab}/logs/apt-cacher-ng/apt-cacher.log" || true
  log "upgrader decommission mailhost   (normally after keep_old_for; now for the demo)"
  upgrader --state-dir "$state" decommission mailhost --yes
}

tests() {
  log "pytest"
  .venv/bin/python -m pytest -q --durations=30 "$@"
}

case "${1:-}" in
  setup) setup ;;
  demo)
    case "${2:-}" in
      debian) setup; demo_debian ;;
      debian-ansible) setup; demo_debian ansible ;;
      "") setup; demo ;;
      *) echo "usage: bash tools/bootstrap.sh demo [debian|debian-ansible]" >&2; exit 2 ;;
    esac ;;
  test) shift; setup; tests "$@" ;;
  *) echo "usage: bash tools/bootstrap.sh setup|demo [debian|debian-ansible]|test [pytest args]" >&2; exit 2 ;;
esac
