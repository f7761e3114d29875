#!/bin/bash
# Inside the guest, as root, once per boot: install babysit for the user `tester` as a user would
# (a virtualenv in their home, from the wheelhouse), then run this boot's VM tests as that user in a
# login session of their own: logind, their user manager, session bus and journald are the guest's.
set -euo pipefail
share=/mnt/share
phase=$(cat $share/phase)
home=/home/tester
echo "guest: phase $phase, $(uname -r), $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup, $(nproc) CPUs"

if [ ! -x $home/venv/bin/babysit ]; then
  started=$SECONDS
  rm -rf $home/babysit && cp -r $share/tree $home/babysit
  # pip runs from its own wheel: a virtualenv without pip takes 1 s here, one with pip 27 s
  runuser -u tester -- python3 -m venv --without-pip $home/venv
  pip_wheel=$(ls $share/wheels/pip-*.whl | head -1)
  runuser -u tester -- $home/venv/bin/python "$pip_wheel/pip" install -q --no-index --disable-pip-version-check \
    --find-links $share/wheels "babysit[test]"
  chown -R tester: $home/babysit
  chmod 755 $home  # the second user runs the same installation
  echo "guest: installed in $((SECONDS - started)) s"
fi

for uid in 1000 1001; do  # the lingering users' managers and buses come up at boot
  for _ in $(seq 600); do [ -S /run/user/$uid/bus ] && break; sleep 0.1; done
done

# `runuser -l` opens a PAM session: pam_systemd registers it with logind and sets XDG_RUNTIME_DIR
# and the session bus address, as for a login over SSH
started=$SECONDS
status=0
select=$(cat $share/select 2>/dev/null || true)  # run.py -k: a developer's pick of the tests
runuser -l tester -c "cd ~/babysit && BABYSIT_VM_GUEST=1 BABYSIT_VM_PHASE=$phase PYTHONDONTWRITEBYTECODE=1 \
  BABYSIT_FAKE_NVML_LIB=$share/fakegpu ~/venv/bin/pytest tests/vm -m vm ${select:+-k '$select'} \
  -p no:cacheprovider -o timeout=300 --junitxml=$share/results-$phase.xml" || status=$?
if [ -n "$select" ] && [ "$status" = 5 ]; then status=0; fi  # the pick has no test in this phase
echo "guest: tests took $((SECONDS - started)) s, exit $status"
exit $status
