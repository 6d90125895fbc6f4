# retinad %post ($1: 1 = install, 2 = upgrade). Install: enable and start when systemd is
# running. Upgrade: %postun restarts it. No .pyc ships; compile once here.
python3 -m compileall -q /usr/lib/retinad >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -eq 1 ]; then
		systemctl enable --now retinad.service >/dev/null 2>&1 ||
			echo "retinad: start failed; see 'journalctl -u retinad' and 'retinad check'" >&2
	fi
fi
exit 0
