"""The rehearsal lab: network namespaces, a private libvirtd, a LabOS mailhost guest (TCG), and
probes. See docs/lab.md.

    from upgrader.lab import Lab
    lab = Lab()            # lab dir: $UPGRADER_LAB_DIR or /var/lib/upgrader-lab
    lab.up()
    lab.guest_exec("mailhost", "cat /etc/labos-release")
    lab.send_mails(50)
    lab.down()
"""

from upgrader.lab.config import Fault, Segment
from upgrader.lab.errors import LabError, LabNotUp, LabTimeout
from upgrader.lab.lab import Lab
from upgrader.lab.proc import CommandFailed, ExecResult
from upgrader.lab.ssh import SSHTarget

__all__ = ["CommandFailed", "ExecResult", "Fault", "Lab", "LabError", "LabNotUp", "LabTimeout",
           "SSHTarget", "Segment"]
