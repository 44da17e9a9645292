module pullmedic.local/pause

go 1.22
