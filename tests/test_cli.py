"""The command line."""

import contextlib
import io
import unittest

import lsst.utils.tests
from lsst.meas.madness.cli import main
from utils import quick_bundle_path


class CliTestCase(lsst.utils.tests.TestCase):
    def test_info(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["info", "--bundle", str(quick_bundle_path())]), 0)
        text = out.getvalue()
        self.assertIn("backend:", text)
        self.assertIn("bands ugrizy", text)
        self.assertIn("trained: True", text)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
