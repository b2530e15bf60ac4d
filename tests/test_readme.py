"""The README's code must run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["shown"].dtype.is_floating_point is False
    assert len(namespace["trainer"].callbacks) >= 2


def test_readme_starts_with_the_demo_and_the_test_command():
    first_block = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)[0]
    demo, tests = first_block.strip().splitlines()
    assert demo.endswith('pip install -e ".[demo]" && python examples/demo.py')
    assert tests.endswith('pip install -e ".[test]" && pytest')
