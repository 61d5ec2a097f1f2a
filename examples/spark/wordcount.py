"""Word count on Spark: reads a data file from the snapshot, counts words with a UDF that imports a module
of this folder (on the executors), logs metrics and writes the top words to $MLTRAIN_OUTPUT_DIR.

    mltrain framework=pyspark compute=spark script=wordcount.py                # local[*]
    mltrain framework=pyspark compute=spark compute.master=spark://host:7077 script=wordcount.py --top 5
"""

import argparse
import json
import os

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--data", default=os.path.join(HERE, "data", "lines.txt"))
    args = parser.parse_args()

    spark = SparkSession.builder.getOrCreate()

    @F.udf("array<string>")
    def words(line):
        from textstats.words import normalise  # imported on the executor, from --py-files

        return normalise(line)

    with open(args.data) as fh:  # read by the driver, from the snapshot
        lines = [(line,) for line in fh]
    counts = (spark.createDataFrame(lines, "line string")
              .select(F.explode(words("line")).alias("word"))
              .groupBy("word").count()
              .orderBy(F.desc("count"), "word"))
    top = [(row["word"], row["count"]) for row in counts.limit(args.top).collect()]
    print(f"::metric distinct_words={counts.count()}")
    print(f"::metric total_words={sum(n for _, n in counts.collect())}")
    with open(os.path.join(os.environ.get("MLTRAIN_OUTPUT_DIR", "."), "top_words.json"), "w") as fh:
        json.dump(top, fh, indent=2)
    for word, n in top:
        print(f"{n:4d}  {word}")
    spark.stop()


if __name__ == "__main__":
    main()
