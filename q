a.docker A
b.docker A
a.docker AAAA
