# retinad %postun ($1: 0 = erase, 1 = upgrade). Upgrade: restart the running service so the
# new code runs (try-restart leaves a stopped one stopped).
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		systemctl try-restart retinad.service >/dev/null 2>&1 || :
	fi
fi
exit 0
