// An ES module with nothing in it: importing it costs what importing any file
// costs (Node's ESM loader resolving, reading and linking a file), which a
// service's own entry file has paid already and `node -e` has not (bench
// section "imports").
