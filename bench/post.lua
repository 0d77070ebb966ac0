-- wrk script for bench/load.sh: a body-less POST (the reference signing endpoint).
wrk.method = "POST"
