for i in 1 2 3 4 5 6; do .venv/bin/pytest -q -x -s tests/integration/test_faults.py -k storm 2>&1 | grep -E "FIGURE|passed|failed|Error" | head -5 | cut -c1-2000; done
