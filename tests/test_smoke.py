"""The app starts and serves on both backends."""


def test_archive_serves(client, admin):
    admin.publish(title="Hello harbour", visibility="public")
    response = client.get("/")
    assert response.status_code == 200
    assert b"Hello harbour" in response.data


def test_worker_runs_a_task(worker, app):
    assert worker.alive
