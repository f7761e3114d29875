"""The session tier's tests whose subject differs on a v2 host, run unchanged in the guest: the kills
(OOM through memory.max, sustained 2x from memory.current and cpu.stat, timeout, stall, pressure), exact
results from memory.peak, the slice's caps, `list` without a terminal, tasks outliving a killed or
restarted babysitd, pauses (systemd's FreezeUnit, the cgroup v2 freezer), and GPUs on the stand-in driver
(their units' DeviceAllow= under a v2 manager)."""

from __future__ import annotations

import pytest

from tests.integration.test_exact_results import test_an_oom_kill_reports_the_peak_at_memory_max
from tests.integration.test_gpus import (
                                              device_nodes,
                                              figures,
                                              test_a_task_can_open_only_the_gpu_it_was_given,
                                              test_gpu_memory_past_the_estimate_warns_and_twice_it_is_killed_with_a_hint,
                                              test_two_tasks_get_different_gpus_a_third_waits_and_takes_a_freed_one,
)
from tests.integration.test_install import test_the_slice_holds_all_tasks_inside_the_budget
from tests.integration.test_lifecycle import (
                                              test_kill_stops_a_running_task,
                                              test_list_and_status_show_a_running_task,
                                              test_run_wait_and_log_a_completed_task,
)
from tests.integration.test_queue_control import (
                                              test_a_pause_that_outlasts_the_backstop_is_ended_by_babysit_thawed_and_said_so,
                                              test_a_paused_task_outlasts_its_kill_timeout_and_silence_and_completes_after_resume,
)
from tests.integration.test_restart import (
                                              test_tasks_outlive_a_killed_daemon,
                                              test_wait_survives_a_daemon_restart_by_systemd,
)
from tests.integration.test_watchdogs import TestKills, quick_watchdogs, test_host_pressure

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("daemon")]
__all__ = ["test_run_wait_and_log_a_completed_task", "test_kill_stops_a_running_task",
           "test_list_and_status_show_a_running_task",
           "test_the_slice_holds_all_tasks_inside_the_budget", "test_an_oom_kill_reports_the_peak_at_memory_max",
           "TestKills", "quick_watchdogs", "test_host_pressure",
           "test_tasks_outlive_a_killed_daemon", "test_wait_survives_a_daemon_restart_by_systemd",
           "test_a_paused_task_outlasts_its_kill_timeout_and_silence_and_completes_after_resume",
           "test_a_pause_that_outlasts_the_backstop_is_ended_by_babysit_thawed_and_said_so", "figures", "device_nodes",
           "test_two_tasks_get_different_gpus_a_third_waits_and_takes_a_freed_one",
           "test_gpu_memory_past_the_estimate_warns_and_twice_it_is_killed_with_a_hint",
           "test_a_task_can_open_only_the_gpu_it_was_given"]
