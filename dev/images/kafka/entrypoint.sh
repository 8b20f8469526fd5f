#!/bin/sh
# apache/kafka's configuration convention: KAFKA_<NAME> -> <name> with "_" -> ".",
# "__" -> "_", "___" -> "-" (the JVM option variables below are not broker settings).
set -euf  # -f: no globbing; the class path's /opt/kafka/libs/* is Java's wildcard
config=/opt/kafka/config/server.properties
: > "$config"
env | sort | while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_LOG4J_OPTS|KAFKA_VERSION) ;;
    KAFKA_*)
      key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' \
            | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
      printf '%s=%s\n' "$key" "$value" >> "$config" ;;
  esac
done
logdirs=$(sed -n 's/^log\.dirs=//p' "$config")
if [ -z "$logdirs" ]; then
  logdirs=/var/lib/kafka/data
  echo "log.dirs=$logdirs" >> "$config"
fi
java="java -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp /opt/kafka/libs/*"
if [ ! -f "${logdirs%%,*}/meta.properties" ]; then
  : "${CLUSTER_ID:?CLUSTER_ID must be set to format the KRaft storage}"
  $java -Xmx256m kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$config"
fi
# shellcheck disable=SC2086  # the option variables are lists of JVM flags
exec $java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m} ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC} \
  ${KAFKA_OPTS:-} kafka.Kafka "$config"
