from service import Settings, create_app


def test_schemathesis_finds_no_server_errors(tiny_checkpoint):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    app = create_app(Settings(checkpoint=str(tiny_checkpoint), device="cpu", max_particles_per_request=50,
                              allowed_hosts=("testserver",)))  # the Host name schemathesis sends
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # each call runs the app's lifespan
    failures, calls = [], []
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call()
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.status_code, response.text[:200]))

        check()
    assert not failures, failures
    assert len(calls) > 100 and any(400 <= c < 500 for c in calls) and 200 in calls


