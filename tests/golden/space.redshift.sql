WITH "scan_identifies" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."plan" AS "plan"
    FROM "website"."identifies" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."plan" AS "plan"
    FROM "ios"."identifies" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "scan_order_completed" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id",
    SUM(CASE WHEN TRUE THEN 1 ELSE 0 END) AS "a3",
    SUM(CASE WHEN TRUE THEN CAST("e"."revenue" AS DOUBLE PRECISION) END) AS "a4",
    SUM(
      CASE
        WHEN "e"."__ts" > CAST('2024-01-31 12:00:00' AS TIMESTAMP)
        AND "e"."revenue" > 50
        AND LEFT("e"."product_sku", 4) = 'sku-'
        THEN 1
        ELSE 0
      END
    ) AS "a5"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."currency" AS "currency",
      "t"."product_sku" AS "product_sku",
      "t"."revenue" AS "revenue"
    FROM "website"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."currency" AS "currency",
      "t"."product_sku" AS "product_sku",
      "t"."revenue" AS "revenue"
    FROM "ios"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "scan_pages" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id",
    SUM(CASE WHEN "e"."name" IN ('Pricing', 'Home') THEN 1 ELSE 0 END) AS "a7"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."name" AS "name"
    FROM "website"."pages" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."name" AS "name"
    FROM "ios"."pages" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "scan_product_viewed" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id",
    SUM(CASE WHEN TRUE THEN 1 ELSE 0 END) AS "a0",
    '[' || COALESCE(
      LISTAGG(
        DISTINCT CASE
          WHEN NOT "e"."category" IS NULL
          THEN '"' || REPLACE(REPLACE(CAST("e"."category" AS VARCHAR(MAX)), '\\', '\\\\'), '"', '\\"') || '"'
        END,
        ','
      ) WITHIN GROUP (ORDER BY
        CASE
          WHEN NOT "e"."category" IS NULL
          THEN '"' || REPLACE(REPLACE(CAST("e"."category" AS VARCHAR(MAX)), '\\', '\\\\'), '"', '\\"') || '"'
        END),
      ''
    ) || ']' AS "a1",
    SUM(
      CASE
        WHEN CASE
          WHEN CAST("e"."category" AS VARCHAR(MAX)) ~ '^\\s*[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?\\s*$'
          THEN CAST(CAST("e"."category" AS VARCHAR(MAX)) AS DOUBLE PRECISION)
        END < 10
        THEN 1
        ELSE 0
      END
    ) AS "a2",
    SUM(
      CASE WHEN "e"."__ts" > CAST('2024-02-23 12:00:00' AS TIMESTAMP) THEN 1 ELSE 0 END
    ) AS "a6"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."category" AS "category"
    FROM "website"."product_viewed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."category" AS "category"
    FROM "ios"."product_viewed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "scan_tracks" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts"
    FROM "website"."tracks" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts"
    FROM "ios"."tracks" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "profiles" AS (
  SELECT
    "__profile",
    MAX("__user_id") AS "__user_id",
    CASE WHEN MAX("__user_id") IS NULL THEN "__profile" END AS "__anonymous_id"
  FROM (
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_identifies"
    UNION ALL
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_order_completed"
    UNION ALL
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_pages"
    UNION ALL
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_product_viewed"
    UNION ALL
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_tracks"
  ) AS "seen"
  GROUP BY
    "__profile"
), "profile_aggregates" AS (
  SELECT
    "p"."__profile",
    "p"."__user_id",
    "p"."__anonymous_id",
    "scan_order_completed"."a3",
    "scan_order_completed"."a4",
    "scan_order_completed"."a5",
    "scan_pages"."a7",
    "scan_product_viewed"."a0",
    "scan_product_viewed"."a1",
    "scan_product_viewed"."a2",
    "scan_product_viewed"."a6"
  FROM "profiles" AS "p"
  LEFT JOIN "scan_order_completed"
    ON "scan_order_completed"."__profile" = "p"."__profile"
  LEFT JOIN "scan_pages"
    ON "scan_pages"."__profile" = "p"."__profile"
  LEFT JOIN "scan_product_viewed"
    ON "scan_product_viewed"."__profile" = "p"."__profile"
), "most_frequent_0" AS (
  SELECT
    "__profile",
    "value"
  FROM (
    SELECT
      "e"."__profile",
      "e"."category" AS "value",
      COUNT(*) AS "n"
    FROM (
      SELECT
        COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
        "t"."user_id" AS "user_id",
        "t"."timestamp" AS "__ts",
        'product_viewed' AS "__event",
        "t"."category" AS "category"
      FROM "website"."product_viewed" AS "t"
      WHERE
        "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
        AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
      UNION ALL
      SELECT
        COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
        "t"."user_id" AS "user_id",
        "t"."timestamp" AS "__ts",
        'product_viewed' AS "__event",
        "t"."category" AS "category"
      FROM "ios"."product_viewed" AS "t"
      WHERE
        "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
        AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    ) AS "e"
    WHERE
      NOT "e"."category" IS NULL
    GROUP BY
      "e"."__profile",
      "e"."category"
    HAVING
      COUNT(*) >= 2
  ) AS "counts"
  QUALIFY
    ROW_NUMBER() OVER (
      PARTITION BY "__profile"
      ORDER BY "n" DESC NULLS LAST, CAST("value" AS VARCHAR(MAX)) ASC
    ) = 1
), "latest_1" AS (
  SELECT
    "e"."__profile",
    "e"."currency" AS "value"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'order_completed' AS "__event",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."currency" AS "currency"
    FROM "website"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'order_completed' AS "__event",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."currency" AS "currency"
    FROM "ios"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  WHERE
    "e"."__event" = 'order_completed' AND NOT "e"."currency" IS NULL
  QUALIFY
    ROW_NUMBER() OVER (
      PARTITION BY "e"."__profile"
      ORDER BY "e"."__ts" ASC NULLS FIRST, "e"."__received_at" ASC NULLS FIRST, "e"."__id" ASC NULLS FIRST
    ) = 1
), "latest_2" AS (
  SELECT
    "e"."__profile",
    "e"."currency" AS "value"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'order_completed' AS "__event",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."currency" AS "currency"
    FROM "website"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'order_completed' AS "__event",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."currency" AS "currency"
    FROM "ios"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  WHERE
    "e"."__event" = 'order_completed' AND NOT "e"."currency" IS NULL
  QUALIFY
    ROW_NUMBER() OVER (
      PARTITION BY "e"."__profile"
      ORDER BY "e"."__ts" DESC NULLS LAST, "e"."__received_at" DESC NULLS LAST, "e"."__id" DESC NULLS LAST
    ) = 1
), "latest_3" AS (
  SELECT
    "e"."__profile",
    "e"."category" AS "value"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'product_viewed' AS "__event",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."category" AS "category"
    FROM "website"."product_viewed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'product_viewed' AS "__event",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."category" AS "category"
    FROM "ios"."product_viewed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  WHERE
    "e"."__event" = 'product_viewed' AND NOT "e"."category" IS NULL
  QUALIFY
    ROW_NUMBER() OVER (
      PARTITION BY "e"."__profile"
      ORDER BY "e"."__ts" DESC NULLS LAST, "e"."__received_at" DESC NULLS LAST, "e"."__id" DESC NULLS LAST
    ) = 1
), "latest_4" AS (
  SELECT
    "e"."__profile",
    "e"."plan" AS "value"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'identifies' AS "__event",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."plan" AS "plan"
    FROM "website"."identifies" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'identifies' AS "__event",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."plan" AS "plan"
    FROM "ios"."identifies" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  WHERE
    "e"."__event" = 'identifies' AND NOT "e"."plan" IS NULL
  QUALIFY
    ROW_NUMBER() OVER (
      PARTITION BY "e"."__profile"
      ORDER BY "e"."__ts" DESC NULLS LAST, "e"."__received_at" DESC NULLS LAST, "e"."__id" DESC NULLS LAST
    ) = 1
), "funnel_step_5" AS (
  SELECT
    "e"."__profile",
    "e"."__ts"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'product_viewed' AS "__event"
    FROM "website"."product_viewed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'product_viewed' AS "__event"
    FROM "ios"."product_viewed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  WHERE
    TRUE
), "funnel_step_6" AS (
  SELECT DISTINCT
    "p"."__profile",
    "e"."__ts"
  FROM "funnel_step_5" AS "p"
  JOIN (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'order_completed' AS "__event"
    FROM "website"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      'order_completed' AS "__event"
    FROM "ios"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
    ON "e"."__profile" = "p"."__profile"
    AND "e"."__ts" > "p"."__ts"
    AND "e"."__ts" <= DATEADD(SECOND, 86400, "p"."__ts")
), "funnel_7" AS (
  SELECT DISTINCT
    "__profile"
  FROM "funnel_step_6"
)
SELECT
  "profile_aggregates"."__profile",
  "profile_aggregates"."__user_id",
  "profile_aggregates"."__anonymous_id",
  CASE WHEN "profile_aggregates"."a0" > 0 THEN "profile_aggregates"."a1" END AS "categories",
  (
    NOT "profile_aggregates"."__user_id" IS NULL
    AND (
      COALESCE(COALESCE("profile_aggregates"."a2", 0) >= 1, FALSE)
    )
  ) AS "cheap_viewers",
  CASE WHEN "profile_aggregates"."a0" > 0 THEN "most_frequent_0"."value" END AS "favourite_category",
  "latest_1"."value" AS "first_currency",
  "latest_2"."value" AS "last_currency",
  "latest_3"."value" AS "latest_category",
  CASE
    WHEN "profile_aggregates"."a3" > 0
    THEN COALESCE("profile_aggregates"."a4", 0)
  END AS "lifetime_revenue",
  (
    NOT "profile_aggregates"."__user_id" IS NULL
    AND (
      COALESCE(
        (
          COALESCE("profile_aggregates"."a5", 0) >= 2
        )
        AND (
          NOT (
            COALESCE("latest_4"."value" = 'enterprise', FALSE)
          )
        ),
        FALSE
      )
    )
  ) AS "repeat_buyers",
  (
    NOT "profile_aggregates"."__user_id" IS NULL
    AND (
      COALESCE(NOT "funnel_7"."__profile" IS NULL, FALSE)
    )
  ) AS "viewed_then_bought",
  (
    COALESCE(
      (
        COALESCE("profile_aggregates"."a6", 0) >= 1
      )
      AND (
        COALESCE("profile_aggregates"."a3", 0) = 0
      )
      AND (
        COALESCE("profile_aggregates"."a7", 0) >= 1
      ),
      FALSE
    )
  ) AS "viewers_not_buyers"
FROM "profile_aggregates"
LEFT JOIN "most_frequent_0"
  ON "most_frequent_0"."__profile" = "profile_aggregates"."__profile"
LEFT JOIN "latest_1"
  ON "latest_1"."__profile" = "profile_aggregates"."__profile"
LEFT JOIN "latest_2"
  ON "latest_2"."__profile" = "profile_aggregates"."__profile"
LEFT JOIN "latest_3"
  ON "latest_3"."__profile" = "profile_aggregates"."__profile"
LEFT JOIN "latest_4"
  ON "latest_4"."__profile" = "profile_aggregates"."__profile"
LEFT JOIN "funnel_7"
  ON "funnel_7"."__profile" = "profile_aggregates"."__profile"
