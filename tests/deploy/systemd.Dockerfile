# Test only (tests/test_deploy_stack.py): the relay image plus systemd as PID 1, running
# docker/axiom-cdc-relay.service as shipped, so its sandbox is applied to a real relay.
# The unit's ExecStart is /opt/axiom-cdc/.venv/bin/cdc; the image's venv is /opt/axiom-cdc.
FROM localhost/axiom-cdc-relay
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd systemd-sysv \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /opt/axiom-cdc /opt/axiom-cdc/.venv
COPY docker/axiom-cdc-relay.service /etc/systemd/system/
COPY docker/axiom-cdc.sysusers /etc/sysusers.d/axiom-cdc.conf
RUN systemctl enable axiom-cdc-relay
ENTRYPOINT ["/lib/systemd/systemd"]
CMD []
