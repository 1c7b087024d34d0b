import pytest

from service import Settings


def test_settings_from_environment():
    s = Settings.from_env({"ZDC_SIM_MAX_BATCH_SIZE": "512", "ZDC_SIM_DEVICE": "cpu"}, port=9000)
    assert (s.max_batch_size, s.device, s.port) == (512, "cpu", 9000)
    with pytest.raises(Exception, match="max_batch_size"):
        Settings.from_env({"ZDC_SIM_MAX_BATCH_SIZE": "0"})
